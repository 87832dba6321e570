"""The OpenAI wire protocol as pydantic models, one module per resource."""
