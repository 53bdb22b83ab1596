"""The Hydra configs of the commands, installed as the package nas.conf (found with pkg://nas.conf)."""
