"""Framework integrations, installed as `cosmo_optim.callbacks`."""
