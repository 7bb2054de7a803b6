"""Daily weather readings from four stations over one winter-to-spring season.

Sensors drop out: about 8% of temperature, rain and humidity readings are missing.
"""

import numpy as np
import pandas as pd

STATIONS = {"Oslo": 2.0, "Bergen": 5.5, "Stavanger": 5.0, "Tromso": -2.5}


def generate(rng: np.random.Generator, days: int = 90) -> dict:
    start = pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(rng.integers(0, 30)))
    dates = pd.date_range(start, periods=days, freq="D")
    frames = []
    for station, base in STATIONS.items():
        season = np.linspace(0, 9, days)
        temp = base + season + rng.normal(0, 2.5, days)
        wet = rng.random(days) < (0.55 if station in ("Bergen", "Stavanger") else 0.35)
        rain = np.where(wet, rng.gamma(1.6, 4.0, days), 0.0)
        frames.append(pd.DataFrame({
            "date": dates,
            "station": station,
            "temp_c": np.round(temp, 1),
            "rain_mm": np.round(rain, 1),
            "humidity": np.clip(np.round(rng.normal(78, 9, days) + 8 * wet), 30, 100),
            "wind_kmh": np.round(rng.gamma(2.0, 7.0, days), 1),
        }))
    df = pd.concat(frames, ignore_index=True)
    for col in ("temp_c", "rain_mm", "humidity"):
        df.loc[rng.random(len(df)) < 0.08, col] = np.nan
    return {"weather": df}
