from gpt2_jax import tokenizer


def test_hello_world_tokens():
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_round_trip_of_shipped_text():
    text = tokenizer.shipped_text()[:5000]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_vocabulary_and_eot():
    enc = tokenizer.get_tokenizer()
    assert enc.n_vocab == tokenizer.VOCAB_SIZE == 50257
    assert enc.eot_token == tokenizer.EOT_TOKEN == 50256
