"""A web shop's database: customers, products and orders (for joins and SQL).

Some customers never ordered and some products were never sold, so inner and outer joins
give different answers; order dates span one year.
"""

import numpy as np
import pandas as pd

FIRST = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
         "Kira", "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara"]
LAST = ["Silva", "Meyer", "Dubois", "Patel", "Rossi", "Novak", "Kim", "Berg", "Costa", "Okafor"]
CITIES = ["Lisbon", "Berlin", "Lyon", "Milan", "Oslo", "Madrid"]
SEGMENTS = ["Consumer", "Business", "Student"]
PRODUCTS = [
    ("Trail Shoes", "Footwear", 89.0), ("Rain Jacket", "Clothing", 129.0),
    ("Wool Socks", "Clothing", 14.0), ("Headlamp", "Gear", 35.0),
    ("Water Bottle", "Gear", 19.0), ("Daypack 20L", "Bags", 59.0),
    ("Hiking Poles", "Gear", 69.0), ("Fleece", "Clothing", 49.0),
    ("Sandals", "Footwear", 45.0), ("Duffel 60L", "Bags", 99.0),
    ("Sun Hat", "Clothing", 22.0), ("Camp Stove", "Gear", 79.0),
]
STATUSES = ["shipped", "shipped", "shipped", "delivered", "delivered", "returned", "pending"]


def generate(rng: np.random.Generator, customers: int = 40, orders: int = 220) -> dict:
    names = {f"{a} {b}" for a in FIRST for b in LAST}
    picked = rng.choice(sorted(names), size=customers, replace=False)
    cust = pd.DataFrame({
        "customer_id": np.arange(1, customers + 1),
        "name": picked,
        "city": rng.choice(CITIES, size=customers),
        "segment": rng.choice(SEGMENTS, size=customers, p=[0.6, 0.3, 0.1]),
        "signup_date": (pd.Timestamp("2022-01-01")
                        + pd.to_timedelta(rng.integers(0, 700, customers), unit="D")),
    })
    prices = np.round(np.array([p[2] for p in PRODUCTS]) * rng.uniform(0.9, 1.1, len(PRODUCTS)))
    prod = pd.DataFrame({
        "product_id": np.arange(101, 101 + len(PRODUCTS)),
        "product": [p[0] for p in PRODUCTS],
        "category": [p[1] for p in PRODUCTS],
        "unit_price": prices,
    })
    buyers = rng.choice(cust["customer_id"].to_numpy()[: int(customers * 0.85)], size=orders)
    sold = prod["product_id"].to_numpy()[:-2]  # the last two products are never ordered
    ords = pd.DataFrame({
        "order_id": np.arange(5001, 5001 + orders),
        "customer_id": buyers,
        "product_id": rng.choice(sold, size=orders),
        "order_date": (pd.Timestamp("2024-01-01")
                       + pd.to_timedelta(rng.integers(0, 366, orders), unit="D")),
        "quantity": rng.choice([1, 1, 1, 2, 2, 3, 4, 5], size=orders),
        "status": rng.choice(STATUSES, size=orders),
    }).sort_values(["order_date", "order_id"]).reset_index(drop=True)
    ords["order_id"] = np.arange(5001, 5001 + orders)
    return {"customers": cust, "products": prod, "orders": ords}
