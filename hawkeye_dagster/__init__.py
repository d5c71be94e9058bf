"""hawkeye-dagster: HawkEye's ML debugging workflows as plain analyses and Dagster wiring.

Dependencies run one way, bottom to top (``tests/test_layering.py`` keeps it so):

1. core: ``contract``, ``errors``, ``settings``, ``atomic``, ``time_range``, ``summary_shape``,
   ``lineage_check``;
2. lake, I/O only: ``lake``, and ``snapshot_io`` beside it;
3. analysis, pure: ``analysis``;
4. triage: ``gather`` (the reads), ``triage``, ``mitigation``, ``incidents``;
5. Dagster wiring: ``assets``, ``sensors``, ``resources``, ``definitions``, ``backfill``,
   ``run_launcher``, ``dagster_runner``;
6. tools: ``cli``, ``demo``, ``simulate``.
"""

from hawkeye_dagster.contract import CONTRACT_VERSION

__all__ = ["CONTRACT_VERSION"]
