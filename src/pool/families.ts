// The base-model families a LoRA can be for, as the host needs them to recognise a file: hidden width and block
// counts. The worker's registry (src/gpu/worker/autolora_worker/families.py) is the full description; keep the
// two in step when a family is added.

export interface ModelFamily {
  name: string;
  /** Width of the hidden state that attention q/k/v read (num_attention_heads × attention_head_dim). */
  hidden: number;
  doubleBlocks: number;
  singleBlocks: number;
}

export const FAMILIES: readonly ModelFamily[] = [
  { name: "flux", hidden: 3072, doubleBlocks: 19, singleBlocks: 38 },
  { name: "proving-ground", hidden: 192, doubleBlocks: 2, singleBlocks: 2 },
];
