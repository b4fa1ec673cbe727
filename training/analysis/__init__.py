"""Redundancy analysis (``asasnn analyze``): the paper's observations on spike firing, ghost and noise
features, membrane-potential distributions and energy, for several models side by side.

``metrics`` holds the definitions as pure functions, ``probes`` what watches the one forward pass,
``run`` the pass and the numbers, ``figures`` and ``report`` the output. See docs/analysis.md.
"""
