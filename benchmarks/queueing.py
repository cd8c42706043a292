"""Single-server FIFO queues with Poisson arrivals, exactly: the yardstick for every latency verdict.

The sleep model served by one worker is such a queue: M/D/1 with a fixed service
time, M/M/1 with `--service-dist exp`. `simulate` runs Lindley's recursion
(W[n+1] = max(0, W[n] + S[n] - A[n+1])) in closed form with numpy; the crossings
are where the p-th percentile of the time in system meets a bound.
"""

from __future__ import annotations

import math

import numpy as np


def simulate(rate: float, service_s: float, dist: str, requests: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sojourn times s, whether each arrival found the system empty) of `requests` arrivals, starting empty."""
    gaps = rng.exponential(1 / rate, requests)
    service = rng.exponential(service_s, requests) if dist == "exp" else np.full(requests, service_s)
    steps = np.empty(requests)
    steps[0] = 0.0
    steps[1:] = service[:-1] - gaps[1:]
    level = np.cumsum(steps)
    wait = level - np.minimum(np.minimum.accumulate(level), 0.0)
    # An arrival finds the system empty when the previous customer left before it came (wait == 0, and not
    # merely a tie: with a fixed service, ties have probability zero).
    return wait + service, wait <= 0.0


def mm1_share_over(rate: float, service_s: float, bound_s: float) -> float:
    """P(time in system > bound) for M/M/1: the sojourn time is exponential with rate mu - lambda."""
    mu = 1 / service_s
    return 1.0 if rate >= mu else math.exp(-(mu - rate) * bound_s)


def md1_share_over(rate: float, service_s: float, bound_s: float) -> float:
    """P(time in system > bound) for M/D/1, from Crommelin's (Erlang's) distribution of the wait.

    P(W <= x) = (1 - rho) sum_{k=0}^{floor(x/D)} (lambda (k D - x))^k / k! e^{-lambda (k D - x)}.
    """
    rho = rate * service_s
    if rho >= 1:
        return 1.0
    x = bound_s - service_s
    if x < 0:
        return 1.0
    total = 0.0
    for k in range(int(x / service_s) + 1):
        u = rate * (k * service_s - x)
        total += u**k / math.factorial(k) * math.exp(-u)
    return min(1.0, max(0.0, 1.0 - (1 - rho) * total))


def crossing(service_s: float, dist: str, bound_s: float, percentile: float) -> float:
    """The arrival rate (requests/s) at which the percentile of the time in system equals the bound."""
    q = 1 - percentile / 100
    share = mm1_share_over if dist == "exp" else md1_share_over
    if dist == "exp":
        return max(0.0, 1 / service_s - math.log(1 / q) / bound_s)
    low, high = 0.0, 1 / service_s
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if share(mid, service_s, bound_s) <= q else (low, mid)
    return low
