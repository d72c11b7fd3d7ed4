"""Actions that make the framework show each behaviour of the contract."""
