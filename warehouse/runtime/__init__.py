"""The bonobo runtime, confined: logging that works on Python 3.11 (logs), the nodes' worker
pools (pools), the strategy that runs a graph (strategy), status lines and the end of a run
(plugins), services built on first use (services), and the command line every graph shares
(command). Rules never import this package.
"""
