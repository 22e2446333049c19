"""Operator tools for a deployed warehouse: logs, inventory, batch deletion."""
