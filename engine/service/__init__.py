"""The engine as a local service: a job queue in SQLite, worker processes, and an HTTP API.

Laid out like InvokeAI's session queue: `models` (what a job and its events are), `queue` (the
abstract queue), `sqlite_queue` (its one implementation), `runner` (starts each job in a child
process and turns engine events into stored ones), `api` (routes that only delegate),
`security` (token and path checks), `client` (what the CLI uses to talk to a running service).

May import every stage below it (placement, generation, training, models, prep), never the commands.
Nothing here imports FastAPI, uvicorn or torch at module level except `api`, which only
`likeness serve` loads.
"""
