"""The dataprocess graph's rules: the warehouse contents, the tables and their cleaning, the
batch, the figures and the pages."""
