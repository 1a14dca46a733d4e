"""Private helpers shared by every jaxtricks module."""
