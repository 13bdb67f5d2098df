"""One scheduler per model and its parts: fair queue, batch former, admission, output cache, stream gate."""
