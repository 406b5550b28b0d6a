"""Adapters to the outside: PostgreSQL, the backup repository and its records, the platform's HTTP APIs,
clusters, the host, Prefect blocks. Below the tasks; they decide nothing a decision module could."""
