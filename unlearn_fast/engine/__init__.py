"""The passes: per-example losses (scoring), the diagonal Fisher (fisher, fisher_hooks), unlearning (unlearn), how the
UNet is called (unet_forward, weight_swap, batching), where it runs (device) and across how many processes
(distributed). They stand on models/ and ops/; the Workspace and the methods stand on them."""
