"""`pythia serve`: an OpenAI-compatible HTTP server and a web chat over one model.

Needs the `serve` extra (Starlette and uvicorn: `pip install 'pythia-gpt[serve]'`); the rest of
Pythia never imports this package. batch.py is the batched decoder (NumPy only), openai_schema.py
the request checks and error object, prompts.py messages to token ids, reply.py streamed text,
generation.py one request in flight, app.py the routes, static/index.html the page.
"""
