"""Notebook views: the deployment card, reports and the live monitor."""
