"""A SyncPool where a ProcessPoolExecutor was: same submit, map, as_completed and shutdown.

Run: python examples/executor_dropin.py

The functions are defined right here, in the script: a worker imports the script by its path
under another name (as multiprocessing does with spawn), so the part under
``if __name__ == "__main__":`` runs only here.
"""

from __future__ import annotations

import concurrent.futures as cf
import math

import snakeden


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def inverse(x: float) -> float:
    return 1 / x


def main() -> None:
    numbers = [1_000_000_007, 1_000_000_011, 2_147_483_647, 4_294_967_297, 999_999_999_989]

    # was: with cf.ProcessPoolExecutor(max_workers=4) as executor:
    with snakeden.SyncPool(max_workers=4) as executor:
        for n, prime in zip(numbers, executor.map(is_prime, numbers), strict=True):
            print(f"{n:>15,} is prime: {prime}")

        # Batches: one message per 100 items instead of one per item.
        total = sum(executor.map(math.factorial, range(20), chunksize=100))
        print(f"sum of 0! .. 19! = {total:,}")

        futures = {executor.submit(inverse, x): x for x in (4, 2, 0, 1)}
        for fut in cf.as_completed(futures):
            x = futures[fut]
            try:
                print(f"1/{x} = {fut.result()}")
            except Exception as exc:
                # The command's exception is raised here again, with the worker's traceback
                # chained as its __cause__; the worker itself keeps serving.
                print(f"1/{x} failed: {type(exc).__name__}: {exc}")

        print(executor)


if __name__ == "__main__":
    main()
