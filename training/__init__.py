"""Training, evaluation, redundancy measurement and export of vanilla and ASA spiking networks."""
