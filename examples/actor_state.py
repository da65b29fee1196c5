"""Keep state that cannot travel inside an actor.

A sqlite3 connection cannot be pickled, so it can never be sent to a task or
returned from one.  An actor owns it instead: the connection is opened in the
actor's constructor, lives in the actor's process, and every caller talks to
it through the actor's handle, which *can* travel (to tasks, to other actors,
inside objects).

Run it:  python examples/actor_state.py
"""
import sqlite3
import textwrap

import miniray


@miniray.remote
class Inventory:
    """A tiny key -> count store backed by an in-memory sqlite database."""

    def __init__(self, items):
        self.db = sqlite3.connect(":memory:")   # unserializable: stays here
        self.db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, count INTEGER)")
        self.db.executemany("INSERT INTO stock VALUES (?, ?)", items.items())

    def add(self, item, count):
        self.db.execute("INSERT INTO stock VALUES (?, ?) ON CONFLICT(item) "
                        "DO UPDATE SET count = count + excluded.count", (item, count))
        return self.count(item)

    def count(self, item):
        row = self.db.execute("SELECT count FROM stock WHERE item = ?", (item,)).fetchone()
        return row[0] if row else 0

    def report(self):
        return dict(self.db.execute("SELECT item, count FROM stock ORDER BY item"))

    def connection(self):
        return self.db                         # a mistake: see below


@miniray.remote
def restock(item, count):
    # Any task can find the named actor and call it; the database stays put.
    inventory = miniray.get_actor("inventory")
    return miniray.get(inventory.add.remote(item, count))


def main():
    miniray.init(num_cpus=2)

    # Constructor args may be ObjectRefs; they are resolved before __init__.
    start = miniray.put({"apples": 3, "pears": 1})
    inventory = Inventory.options(name="inventory").remote(start)

    # Method calls return ObjectRefs; calls from one caller run in order.
    print("apples:", miniray.get(inventory.add.remote("apples", 2)))        # 5
    miniray.get([restock.remote("pears", n) for n in (1, 2, 3)])   # three tasks, any order
    print("report:", miniray.get(inventory.report.remote()))

    # The handle travels; the connection does not.
    same = miniray.get_actor("inventory")
    assert miniray.get(same.count.remote("pears")) == 7

    # Asking for the connection itself fails with a SerializationError that
    # names what cannot travel and suggests keeping it in an actor.
    try:
        miniray.get(inventory.connection.remote())
    except miniray.exceptions.SerializationError as exc:
        # Raised inside the actor, so it is also a RayTaskError; .cause is the
        # original error without the remote traceback.
        print("\nreturning the connection fails:")
        print(textwrap.fill(str(exc.cause), 88, initial_indent="  ", subsequent_indent="  "))

    # Passing one in fails at the call site, naming the argument.
    local = sqlite3.connect(":memory:")
    try:
        Inventory.remote({"db": local})
    except miniray.exceptions.SerializationError as exc:
        print("\npassing a connection fails:")
        print(textwrap.fill(str(exc), 88, initial_indent="  ", subsequent_indent="  "))
    finally:
        local.close()

    # The actor ends when its last handle goes (or with miniray.kill).
    miniray.kill(inventory)
    miniray.shutdown()


if __name__ == "__main__":
    main()
