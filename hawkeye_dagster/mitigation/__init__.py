"""Mitigation: pause the pipelines that carry bad upstream data, record it, and undo it exactly.

:mod:`.planning` computes which pipelines to pause and whether the policy
allows it, :mod:`.controls` talks to the orchestrators (Dagster GraphQL,
Airflow REST), :mod:`.audit` keeps the SQL audit trail, and :mod:`.pausing`
carries a plan out (idempotently) and restores the state before.
"""
