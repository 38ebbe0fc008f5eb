"""The other process of the raw pipeline: consume commands, publish results. No Keel code at all."""

import asyncio
import sys

import nats
from nats.errors import TimeoutError as NatsTimeout


async def main(url: str, stream: str, durable: str, batch: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable, stream)
    print("ready", flush=True)
    while True:
        try:
            msgs = await sub.fetch(batch, timeout=1)
        except NatsTimeout:
            continue
        for msg in msgs:
            # cmd subject: floor.cmd.<run>.<step>  ->  result subject: floor.res.<run>.<step>
            key = msg.subject.removeprefix("floor.cmd.")
            await js.publish(f"floor.res.{key}", msg.data, headers={"Nats-Msg-Id": f"r{key}"})
            await msg.ack()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
