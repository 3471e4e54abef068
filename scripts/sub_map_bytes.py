"""Bytes per user that the sub→username map costs reconcile: `python scripts/sub_map_bytes.py [USERS]`.

Builds, in memory, the snapshot reconcile writes (with and without each user's sub) and the 256 shards of the map,
for USERS (default 100,000) users named by e-mail address with random UUID subs, as a pool that signs in by e-mail
has, and prints the compressed sizes. Nothing is sent anywhere.
"""

from __future__ import annotations

import random
import sys
import uuid

from chalicelib import snapshot, sub_index


def main(users: int) -> None:
    rng = random.Random(7)
    people = [
        (f"user{n}.{rng.randrange(10**6)}@example{rng.randrange(50)}.com", str(uuid.UUID(int=rng.getrandbits(128))))
        for n in range(users)
    ]
    plain, with_sub = snapshot.SnapshotWriter(), snapshot.SnapshotWriter()
    for username, sub in people:
        fp = rng.getrandbits(64)
        plain.add(username, fp)
        with_sub.add(username, fp, sub)
    before, after = len(plain.finish()), len(with_sub.finish())
    shards = sub_index.encode_shards((sub, username) for username, sub in people)
    index = sum(len(body) for body in shards.values())
    print(f"{users:,} users")
    print(f"snapshot without subs: {before:,} bytes = {before / users:.1f} B/user")
    print(f"snapshot with subs:    {after:,} bytes = {after / users:.1f} B/user")
    print(
        f"sub map, {len(shards)} shards: {index:,} bytes = {index / users:.1f} B/user "
        f"(largest shard {max(len(b) for b in shards.values()):,} bytes)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
