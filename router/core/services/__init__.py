"""The request pipeline and the Embed, Rerank and Generate services with their types and checks."""
