"""The default model's word-level tokenizer and text encoder."""
import pytest
import torch

from unlearn_fast.models.text_encoder import WordTextEncoder, WordTokenizer, split_words


def test_words_are_normalised_and_new_tokens_stay_whole():
    assert split_words("Flag: Japan") == ["flag", "japan"]
    assert split_words("man farmer: medium-dark skin tone") == ["man", "farmer", "medium-dark", "skin", "tone"]
    assert split_words("a photo of <v1>, smiling") == ["a", "photo", "of", "<v1>", "smiling"]


def test_tokenizer_layout_unknown_words_and_added_tokens(tmp_path):
    tokenizer = WordTokenizer.from_captions(["red apple", "flag: Japan", "cat face"], max_length=6)
    ids = tokenizer(["red apple", "apple red", "flag japan cat face red apple"])
    bos, eos, pad = tokenizer.index["<bos>"], tokenizer.index["<eos>"], tokenizer.pad_id
    assert ids[0].tolist() == [bos, tokenizer.index["red"], tokenizer.index["apple"], eos, pad, pad]
    assert ids[0].tolist() != ids[1].tolist()
    assert ids[2, -1] == eos  # truncated to max_length, still closed
    with pytest.warns(UserWarning, match=r"'green apple'.*unknown word\(s\) \['green'\]"):
        unknown = tokenizer(["green apple"])
    assert unknown[0, 1] == tokenizer.index["<unk>"]
    size = len(tokenizer)
    new_ids = tokenizer.add_tokens(["<v1>", "red"])
    assert new_ids == [size, tokenizer.index["red"]] and len(tokenizer) == size + 1
    with pytest.raises(ValueError, match="not a single word"):
        tokenizer.add_tokens(["two words"])
    tokenizer.save_pretrained(str(tmp_path))
    again = WordTokenizer.from_pretrained(str(tmp_path))
    assert again.vocab == tokenizer.vocab and torch.equal(again(["<v1> apple"]), tokenizer(["<v1> apple"]))


def test_encoder_ignores_padding_and_grows_its_vocabulary():
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_captions(["red apple", "cat face"], max_length=8)
    encoder = WordTextEncoder(len(tokenizer), max_length=8, dim=16, num_heads=2).eval()
    ids = tokenizer(["red apple"])
    out = encoder(ids)
    assert out.shape == (1, 8, 16)
    longer = WordTextEncoder(len(tokenizer), max_length=8, dim=16, num_heads=2).eval()
    longer.load_state_dict(encoder.state_dict())
    longer.resize_token_embeddings(len(tokenizer) + 2)
    assert longer.config.vocab_size == len(tokenizer) + 2
    with torch.no_grad():
        torch.testing.assert_close(longer(ids), out)  # old words encode exactly as before
    real = ids != tokenizer.pad_id
    with torch.no_grad():  # padded positions are masked: what the pad embedding holds cannot reach the real tokens
        encoder.token_embedding.weight[tokenizer.pad_id] += 5.0
        changed = encoder(ids)
    torch.testing.assert_close(changed[real], out[real])
    assert not torch.allclose(changed[~real], out[~real])
