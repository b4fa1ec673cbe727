"""Networks, spiking dynamics, event encoding and the stepwise runtime shared by training and service."""
