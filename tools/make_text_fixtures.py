"""Generate tiny text corpora and tiny offline "pretrained" models for the text recipes.

    python tools/make_text_fixtures.py --out DIR [--seed 0]

writes

    DIR/glue/{SST-2,QNLI,QQP}/{train,dev}.tsv     official GLUE columns
    DIR/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt
    DIR/pile/{train_00,train_01,val}.jsonl        {"text": ...} per line
    DIR/roberta_tiny/   RobertaForSequenceClassification + WordLevel tokenizer
    DIR/pythia_tiny/    GPTNeoXForCausalLM + the same kind of tokenizer

The sentences come from a tiny grammar whose sentiment word decides the label, so a
tiny model can learn the tasks. The tokenizers are built from the fixture text with
the `tokenizers` library, so `source_hub: DIR/roberta_tiny` works exactly as a hub
model folder would, offline.
"""

import argparse
import json
import os
import random

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

POSITIVE = ["good", "great", "lovely", "fine", "superb"]
NEGATIVE = ["bad", "awful", "boring", "poor", "dull"]
SUBJECTS = ["the film", "this movie", "the plot", "the cast", "the story", "the music"]
VERBS = ["was", "seemed", "felt", "looked"]
EXTRAS = ["today", "again", "overall", "indeed", "to me", "at times"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def sentence(rng, positive):
    """One sentence whose sentiment word is positive or negative."""
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {word} {rng.choice(EXTRAS)} ."


def write_tsv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")


def make_glue(out, rng, n_train=200, n_dev=60):
    """SST-2 (sentence label), QNLI (index question sentence label), QQP."""
    for split, n in (("train", n_train), ("dev", n_dev)):
        labels = [rng.random() < 0.5 for _ in range(n)]
        write_tsv(
            f"{out}/glue/SST-2/{split}.tsv",
            ["sentence", "label"],
            [(sentence(rng, y), int(y)) for y in labels],
        )
        rows = []
        for i, y in enumerate(labels):  # entailment: the asked word is in the sentence
            s = sentence(rng, rng.random() < 0.5)
            word = s.split()[2] if y else rng.choice(EXTRAS[:1] + ["missing"])
            rows.append((i, f"is {word} the word ?", s, "entailment" if y else "not_entailment"))
        write_tsv(f"{out}/glue/QNLI/{split}.tsv", ["index", "question", "sentence", "label"], rows)
        rows = []
        for i, y in enumerate(labels):  # duplicate: same sentiment polarity
            a = rng.random() < 0.5
            rows.append((i, 2 * i, 2 * i + 1, sentence(rng, a), sentence(rng, a == y), int(y)))
        header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
        write_tsv(f"{out}/glue/QQP/{split}.tsv", header, rows)


def make_imdb(out, rng, n=60):
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, a few sentences per review."""
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = f"{out}/aclImdb/{split}/{label}"
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                text = " ".join(sentence(rng, label == "pos") for _ in range(3))
                rating = 8 if label == "pos" else 2
                with open(f"{folder}/{i}_{rating}.txt", "w", encoding="utf-8") as f:
                    f.write(text + "<br /><br />")


def make_pile(out, rng, docs=(60, 60, 30)):
    """Two train shards and a held-out shard of short documents."""
    os.makedirs(f"{out}/pile", exist_ok=True)
    for name, n in zip(("train_00", "train_01", "val"), docs):
        with open(f"{out}/pile/{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                y = rng.random() < 0.5
                text = " ".join(sentence(rng, y) for _ in range(rng.randint(2, 5)))
                f.write(json.dumps({"text": text}) + "\n")


def make_tokenizer(texts, bos_eos_pair):
    """WordLevel tokenizer over the fixture words, as an HF fast tokenizer."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos_eos_pair:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)],
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
    )


def all_words():
    """Every word the grammar and the QNLI questions can produce."""
    words = POSITIVE + NEGATIVE + SUBJECTS + VERBS + EXTRAS + [". is the word ? missing"]
    return [" ".join(words), "<br />"]


def make_models(out, seed):
    """Tiny RoBERTa classifier and tiny Pythia, saved with their tokenizers."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(all_words(), bos_eos_pair=True)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=2,
    )
    transformers.RobertaForSequenceClassification(config).save_pretrained(f"{out}/roberta_tiny")
    tokenizer.save_pretrained(f"{out}/roberta_tiny")
    tokenizer = make_tokenizer(all_words(), bos_eos_pair=False)
    config = transformers.GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    transformers.GPTNeoXForCausalLM(config).save_pretrained(f"{out}/pythia_tiny")
    tokenizer.save_pretrained(f"{out}/pythia_tiny")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    make_glue(args.out, rng)
    make_imdb(args.out, rng)
    make_pile(args.out, rng)
    make_models(args.out, args.seed)


if __name__ == "__main__":
    main()
