"""The imaging data warehouse loader: three bonobo graphs and their rules."""

__version__ = "0.2.0"
