"""The table and its server-side setup: model, options and DDL hooks per dialect."""
