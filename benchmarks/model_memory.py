"""Peak RSS of a bare training loop: torchvision mobilenet_v2 at 192 px on random tensors (no data
set at all), AdamW, channels_last, five steps. The reference for what `bench_data.py --parts cli`
measures for `dlpipe finetune --no-freeze`: what is left over is dlpipe's data path.

    .venv/bin/python benchmarks/model_memory.py 16    # batch size
"""

import sys

import torch
from torch import nn

from dlpipe.compat import import_torchvision


def main() -> None:
    """Five steps at the batch size given, then print the peak and anonymous RSS."""
    tv = import_torchvision()
    b = int(sys.argv[1])
    m = tv.models.mobilenet_v2(num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    for _ in range(5):
        x = torch.randn(b, 3, 192, 192).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(m(x), torch.randint(0, 10, (b,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    mb = {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon")}
    print(f"batch {b}: peak RSS {mb['VmHWM']:.0f} MB, anonymous {mb['RssAnon']:.0f} MB")


if __name__ == "__main__":
    main()
