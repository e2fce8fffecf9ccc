"""Restores: choose a backup, plan, restore with undo, compare; rehydrate archives; restore drills."""
