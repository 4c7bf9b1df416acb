"""Seeded synthetic data for demos and tests: OHLCV series and labelled financial headlines.

Nothing is downloaded; the same seed always gives the same data.
"""

from __future__ import annotations

import numpy as np

# Regimes of the price process: (daily drift, daily volatility).
_REGIMES = ((0.0008, 0.010), (-0.0008, 0.012), (0.0, 0.006), (0.0, 0.025))

POSITIVE_WORDS = (
    "beats", "surges", "soars", "rallies", "jumps", "climbs", "gains", "rises", "outperforms", "upgrade",
    "upgraded", "record", "strong", "robust", "growth", "profit", "profits", "bullish", "boost", "boosts",
    "raises", "exceeds", "optimistic", "expansion", "rebound", "recovers", "wins", "approval", "breakthrough",
    "dividend", "buyback", "accelerates", "tops", "higher", "upbeat", "momentum", "positive", "improves",
)
NEGATIVE_WORDS = (
    "misses", "plunges", "tumbles", "slumps", "drops", "falls", "sinks", "declines", "underperforms", "downgrade",
    "downgraded", "loss", "losses", "weak", "bearish", "cuts", "warning", "warns", "lawsuit", "probe", "fraud",
    "bankruptcy", "default", "layoffs", "recall", "slowdown", "recession", "lower", "disappointing", "crash",
    "selloff", "concerns", "fears", "investigation", "fine", "delays", "negative", "worsens",
)
NEUTRAL_WORDS = (
    "reports", "announces", "holds", "schedules", "files", "publishes", "expects", "maintains", "reviews",
    "meets", "plans", "opens", "names", "appoints", "confirms", "updates", "lists", "trades", "unchanged",
    "steady", "flat", "mixed", "in-line", "remains", "considers", "discusses", "hosts", "releases",
)
SUBJECTS = (
    "apple", "microsoft", "tesla", "amazon", "nvidia", "google", "meta", "netflix", "intel", "oracle",
    "jpmorgan", "goldman", "boeing", "exxon", "chevron", "pfizer", "walmart", "disney", "ford", "shell",
    "the company", "the bank", "the fed", "the ecb", "the market", "the index", "the chipmaker", "the retailer",
    "the automaker", "the airline", "the insurer", "the startup", "investors", "analysts", "traders", "oil",
    "gold", "bitcoin", "the dollar", "treasury yields", "the s&p 500", "the nasdaq", "the dow",
)
OBJECTS = (
    "quarterly earnings", "revenue", "guidance", "estimates", "expectations", "sales", "margins", "outlook",
    "forecast", "shares", "stock", "results", "full-year targets", "interest rates", "inflation data",
    "jobs report", "merger talks", "the acquisition", "the deal", "its dividend", "production", "deliveries",
    "demand", "supply", "costs", "the quarter", "the year", "market share", "its ceo", "the board",
)
FILLERS = (
    "after", "amid", "as", "on", "in", "for", "with", "despite", "ahead", "of", "the", "a", "to", "its",
    "and", "by", "from", "over", "this", "week", "today", "early", "late", "trading", "session", "report",
    "says", "said", "percent", "than", "more", "less", "new", "first", "second", "third", "fourth", "q1",
    "q2", "q3", "q4", "year", "month", "analyst", "wall", "street", "europe", "asia", "china", "us",
)
SENTIMENT_CLASSES = ("negative", "neutral", "positive")


def synthetic_ohlcv(n_steps: int, seed: int = 0, start_price: float = 100.0) -> np.ndarray:
    """``[n_steps, 5]`` float64 open/high/low/close/volume from a regime-switching geometric Brownian motion."""
    rng = np.random.default_rng(seed)
    regime = np.empty(n_steps, dtype=np.int64)
    current = 0
    for t in range(n_steps):
        if rng.random() < 0.02:  # regimes last ~50 steps on average
            current = int(rng.integers(len(_REGIMES)))
        regime[t] = current
    drift = np.array([_REGIMES[r][0] for r in regime])
    vol = np.array([_REGIMES[r][1] for r in regime])
    log_returns = drift - 0.5 * vol**2 + vol * rng.standard_normal(n_steps)
    close = start_price * np.exp(np.cumsum(log_returns))
    open_ = np.concatenate([[start_price], close[:-1]]) * np.exp(0.1 * vol * rng.standard_normal(n_steps))
    spread = np.abs(rng.standard_normal((2, n_steps))) * vol * close * 0.5
    high = np.maximum(open_, close) + spread[0]
    low = np.maximum(np.minimum(open_, close) - spread[1], 1e-3)
    volume = rng.lognormal(mean=13.0, sigma=0.3, size=n_steps) * (1.0 + 30.0 * np.abs(log_returns))
    return np.stack([open_, high, low, close, volume], axis=1)


def synthetic_headlines(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` headlines and their labels (0 negative, 1 neutral, 2 positive) built from word lists."""
    rng = np.random.default_rng(seed)
    words = {0: NEGATIVE_WORDS, 1: NEUTRAL_WORDS, 2: POSITIVE_WORDS}
    labels = rng.integers(0, 3, size=n)
    texts = []
    for label in labels:
        verb = words[int(label)][rng.integers(len(words[int(label)]))]
        parts = [SUBJECTS[rng.integers(len(SUBJECTS))], verb, OBJECTS[rng.integers(len(OBJECTS))]]
        for _ in range(int(rng.integers(0, 5))):
            parts.append(FILLERS[rng.integers(len(FILLERS))])
        if rng.random() < 0.3:  # a second cue of the same sentiment
            parts.append(words[int(label)][rng.integers(len(words[int(label)]))])
        texts.append(" ".join(parts))
    return texts, labels.astype(np.int64)
