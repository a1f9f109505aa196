"""Helpers the Snakemake workflow calls while building the DAG: config checks and job resources (torch-free)."""
