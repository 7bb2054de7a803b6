"""Retail sales: one row per order line of a small chain selling office and home goods.

``generate(rng)`` returns ``{"sales": DataFrame}``; the seed changes every number.
"""

import numpy as np
import pandas as pd

PRODUCTS = {
    "Desk Lamp": ("Home", 24.0), "Office Chair": ("Furniture", 149.0),
    "Standing Desk": ("Furniture", 389.0), "Notebook A5": ("Stationery", 4.5),
    "Gel Pens (10)": ("Stationery", 7.9), "Monitor 27in": ("Electronics", 229.0),
    "USB-C Hub": ("Electronics", 39.0), "Coffee Mug": ("Home", 9.5),
    "Bookshelf": ("Furniture", 119.0), "Wireless Mouse": ("Electronics", 25.0),
}
REGIONS = ["North", "South", "East", "West"]
CHANNELS = ["Online", "Store", "Phone"]


def generate(rng: np.random.Generator, rows: int = 240) -> dict:
    names = list(PRODUCTS)
    weights = rng.dirichlet(np.ones(len(names)) * 2)
    product = rng.choice(names, size=rows, p=weights)
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 182, rows), unit="D")
    base = np.array([PRODUCTS[p][1] for p in product])
    unit_price = np.round(base * rng.choice([1.0, 1.0, 1.0, 0.9, 0.85], size=rows), 2)
    units = rng.integers(1, 13, rows)
    df = pd.DataFrame({
        "order_id": np.arange(10001, 10001 + rows),
        "date": days,
        "region": rng.choice(REGIONS, size=rows, p=rng.dirichlet(np.ones(4) * 4)),
        "channel": rng.choice(CHANNELS, size=rows, p=[0.5, 0.35, 0.15]),
        "product": product,
        "category": [PRODUCTS[p][0] for p in product],
        "units": units,
        "unit_price": unit_price,
    })
    df["revenue"] = np.round(df["units"] * df["unit_price"], 2)
    return {"sales": df.sort_values(["date", "order_id"]).reset_index(drop=True)}
