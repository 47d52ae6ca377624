"""The S²CRNet REST service (FastAPI + uvicorn); app.main holds `create_app`, `run` and `app`."""
