"""ASA-SNN stream: spiking networks with Advanced Spatial Attention on event-camera streams."""

__version__ = "0.1.0"
