"""Worker code calls back into the host: ``snakeden.context().call_host(name, ...)``.

Run: python examples/host_callbacks.py

The host registers functions (``host_functions=`` or ``pool.register()``); a command calls them
to fetch data its caller holds or to report progress. Values and errors travel both ways.
"""

from __future__ import annotations

import snakeden

PRICES = {"apple": 3, "pear": 5}


def basket_total(items: list[str]) -> int:
    ctx = snakeden.context()
    total = 0
    for i, item in enumerate(items):
        try:
            total += ctx.call_host("price", item)
        except KeyError:
            ctx.call_host("progress", f"no price for {item!r}, skipped")
        ctx.call_host("progress", f"{i + 1}/{len(items)} priced")
    return total


def main() -> None:
    def progress(text: str) -> None:
        print(f"  progress: {text}")

    with snakeden.SyncPool(size=1, host_functions={"price": PRICES.__getitem__}) as pool:
        pool.register("progress", progress)
        total = pool.call(basket_total, ["apple", "kiwi", "pear"])
        print(f"basket total: {total}")


if __name__ == "__main__":
    main()
