"""Does the image reach the answer? Linear probes on a graft model's hidden states, layer by layer.

For held-out "Is there a red object in the image?" questions of the shapes world
(``graft.world.diagnostics.presence_questions``), asked in the model's chat template:

- **image tokens**: is each colour in the image, read linearly from the mean of the image's
  soft tokens at that layer (mean over the five colours) — is the information there?
- **answer position**: the question's yes/no answer, read linearly from the last prompt token
  (where the answer is generated) — has the model brought it there?

A model that holds the colours in its image tokens but not the answer at the answer position
perceives without reading: the failure a plateau of stage 2 shows (``perception_warmup.py``).

    python benchmarks/routing_probe.py --model runs/demo/stage1 --world runs/demo/world

(``runs/demo`` made by ``graft demo --alignment captions``: the default demo has no stage 1.)

Prints one JSON line: per probed layer, both accuracies, and the majority baselines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from graft.inference import load_for_inference
from graft.processing import GraftProcessor, load_image
from graft.templates import Message
from graft.world.diagnostics import presence_questions
from graft.world.scene import COLORS


@torch.no_grad()
def _states(model, processor, world: Path, rows: list[dict], colours: dict[str, set]) -> tuple:
    """Per row: the last prompt token's and the image tokens' mean hidden state at every layer
    (``[N, layers + 1, d]`` each) and the labels (answer, then each colour's presence)."""
    last, image, labels = [], [], []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        convs = [[Message("user", f"{processor.image_token}\n{row['question']}")] for row in chunk]
        batch = processor.prompts(convs, [[load_image(world / row["image"])] for row in chunk])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states
        mask = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).float()
        last.append(torch.stack([h[:, -1].float() for h in hidden], 1).cpu())
        image.append(torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in hidden], 1).cpu())
        for row in chunk:
            labels.append([row["answer"] == "Yes"] + [c in colours[row["image"]] for c in COLORS])
    return torch.cat(last), torch.cat(image), torch.tensor(labels, dtype=torch.float32)


def _probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> float:
    """Held-out accuracy of an L2-regularised logistic regression on standardised features."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-5
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (((xte @ w + b) > 0).float() == yte).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a graft model folder")
    parser.add_argument("--world", type=Path, default=Path("runs/demo/world"))
    parser.add_argument("--template", default="smollm2", help="the chat template the questions are asked in")
    parser.add_argument("--train", type=int, default=1200, help="probe-training questions (train images)")
    parser.add_argument("--test", type=int, default=300, help="held-out questions (test images)")
    parser.add_argument("--every", type=int, default=3, help="probe every Nth layer")
    args = parser.parse_args()

    model, _ = load_for_inference(args.model)
    processor = GraftProcessor.from_pretrained(args.model, template=args.template)
    colours = {}
    for split in ("train", "test"):
        for line in (args.world / "meta" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            colours[row["image"]] = {o["color"] for o in row["scene"]["objects"]}
    train_rows = presence_questions(args.world, "train")[: args.train]
    test_rows = presence_questions(args.world, "test")[: args.test]
    ltr, itr, ytr = _states(model, processor, args.world, train_rows, colours)
    lte, ite, yte = _states(model, processor, args.world, test_rows, colours)
    layers = {}
    for layer in range(0, ltr.shape[1], args.every):
        answer = _probe(ltr[:, layer], ytr[:, 0], lte[:, layer], yte[:, 0])
        present = [
            _probe(itr[:, layer], ytr[:, k], ite[:, layer], yte[:, k]) for k in range(1, len(COLORS) + 1)
        ]
        layers[layer] = {
            "answer_at_last_token": round(answer, 3),
            "colours_in_image_tokens": round(sum(present) / len(present), 3),
        }
    majority = [round(max(p, 1 - p), 3) for p in yte.mean(0).tolist()]
    print(
        json.dumps(
            {
                "model": str(args.model),
                "layers": layers,
                "majority": {"answer": majority[0], "colours": majority[1:]},
            }
        )
    )


if __name__ == "__main__":
    main()
