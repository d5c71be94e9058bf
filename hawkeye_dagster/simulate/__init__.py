"""Simulated ML worlds with real incidents: the demo, test and accuracy-benchmark data.

``simulate(out_dir, scenario, seed, scale, factors=...)`` writes a telemetry lake that
follows the contract and returns the ground truth of the incidents in it.
"""

from hawkeye_dagster.simulate.engine import simulate
from hawkeye_dagster.simulate.factors import FACTORS
from hawkeye_dagster.simulate.scenarios import SCENARIOS
from hawkeye_dagster.simulate.world import SCALES

__all__ = ["FACTORS", "SCALES", "SCENARIOS", "simulate"]
