"""Trains the demo model bundled with halfsim (halfsim/data/digits.onnx) on scikit-learn's
digits and stores the held-out split (halfsim/data/digits_test.npz). Developer tool: needs torch
and scikit-learn, which halfsim itself does not. Run: python tools/train_demo.py"""
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.join(os.path.dirname(__file__), "..", "halfsim", "data")


class DigitsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.nn.functional.gelu(self.norm(self.fc1(x.flatten(1))))
        return torch.softmax(self.fc2(x), dim=-1)


def main() -> None:
    torch.manual_seed(0)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for epoch in range(40):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            p = net(xt[idx])
            loss = torch.nn.functional.nll_loss(torch.log(p + 1e-9), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
    print(f"held-out accuracy {acc:.4f}")
    os.makedirs(OUT, exist_ok=True)
    torch.onnx.export(net, torch.from_numpy(xte[:1]), os.path.join(OUT, "digits.onnx"), input_names=["image"],
                      output_names=["probs"], dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    np.savez_compressed(os.path.join(OUT, "digits_test.npz"), image=xte, label=yte.astype(np.int64))


if __name__ == "__main__":
    main()
