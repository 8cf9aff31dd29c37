"""Token shards (llm.c's .bin format) and the grain pipeline that feeds the train step."""
