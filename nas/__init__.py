"""nas: neural architecture search for recurrent cells."""

__version__ = "0.1.0"
