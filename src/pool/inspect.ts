// What a validated safetensors file is as a LoRA: its community format, the model family it is for, how many
// LoRA-carrying modules it has and their ranks, read from the tensor names and shapes alone. The worker reads
// the factors themselves (canonicalise + embed); this lets the host refuse a wrong file before it goes there.
import { FAMILIES } from "./families.js";
import { InvalidLoraFileError, type SafetensorsHeader, type TensorInfo } from "./safetensors.js";

export const LORA_FORMATS = ["diffusers", "kohya", "comfyui", "xlabs", "bfl"] as const;
export type LoraFormat = (typeof LORA_FORMATS)[number];

export interface LoraInspection {
  format: LoraFormat;
  /** The family whose hidden width and block counts fit the file, or null when none does. */
  family: string | null;
  /** Down/up pairs in the file. Formats that fuse q, k, v into one tensor count that tensor once. */
  modules: number;
  /** Sorted distinct ranks as stored. A fused tensor stacks its modules' factors: a q/k/v one shows 3× the
   *  per-module rank, a single block's linear1 (q/k/v/proj_mlp) 4×. */
  ranks: number[];
  /** Tensor names no LoRA format uses; the worker ignores them. */
  unknownKeys: string[];
  tensors: number;
  metadata: Record<string, string>;
}

type Role = "down" | "up" | "alpha";
interface Recognised {
  format: LoraFormat;
  module: string;
  role: Role;
}

const FLOAT_DTYPES = new Set(["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"]);
const ROLE_OF_SUFFIX: Record<string, Role> = {
  "lora_down.weight": "down", "lora_A.weight": "down", "down.weight": "down",
  "lora_up.weight": "up", "lora_B.weight": "up", "up.weight": "up", alpha: "alpha",
};

// The key layouts community FLUX LoRAs come in (see ../shared/notes on the formats).
const KOHYA = /^(lora_(?:unet|transformer)_\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const XLABS = /^(?:diffusion_model\.)?((?:double|single)_blocks\.\d+\.processor\.\w+)\.(down\.weight|up\.weight)$/;
const SUFFIX = "(lora_down\\.weight|lora_up\\.weight|lora_A\\.weight|lora_B\\.weight|alpha)";
const BFL = new RegExp(
  "^(diffusion_model\\.|base_model\\.model\\.)?" +
    "((?:double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)[\\w.]*?)\\." + SUFFIX + "$",
);
const DIFFUSERS = new RegExp(
  "^(transformer\\.|diffusion_model\\.|base_model\\.model\\.)?" +
    "((?:transformer_blocks|single_transformer_blocks|x_embedder|context_embedder|time_text_embed|norm_out|proj_out)" +
    "[\\w.]*?)\\." + SUFFIX + "$",
);

function recognise(key: string): Recognised | undefined {
  let match = KOHYA.exec(key);
  if (match) return { format: "kohya", module: match[1]!, role: ROLE_OF_SUFFIX[match[2]!]! };
  match = XLABS.exec(key);
  if (match) return { format: "xlabs", module: match[1]!, role: ROLE_OF_SUFFIX[match[2]!]! };
  match = BFL.exec(key);
  if (match) {
    const format = match[1] === "diffusion_model." ? "comfyui" : "bfl";
    return { format, module: match[2]!, role: ROLE_OF_SUFFIX[match[3]!]! };
  }
  match = DIFFUSERS.exec(key);
  if (match) {
    const format = match[1] === "diffusion_model." ? "comfyui" : "diffusers";
    return { format, module: match[2]!, role: ROLE_OF_SUFFIX[match[3]!]! };
  }
  return undefined;
}

/** Describe the LoRA in a validated header, or throw InvalidLoraFileError("not-a-lora") saying what is missing. */
export function inspectLora(header: SafetensorsHeader): LoraInspection {
  const modules = new Map<string, Partial<Record<Role, TensorInfo>>>();
  const formatVotes = new Map<LoraFormat, number>();
  const unknownKeys: string[] = [];
  for (const tensor of header.tensors) {
    const found = recognise(tensor.name);
    if (!found) {
      unknownKeys.push(tensor.name);
      continue;
    }
    formatVotes.set(found.format, (formatVotes.get(found.format) ?? 0) + 1);
    const parts = modules.get(found.module) ?? {};
    parts[found.role] = tensor;
    modules.set(found.module, parts);
  }
  if (modules.size === 0) {
    throw new InvalidLoraFileError(
      "not-a-lora",
      `no tensor name matches a FLUX LoRA format (diffusers, kohya, comfyui, xlabs, bfl); first keys: ${
        header.tensors.slice(0, 3).map((t) => t.name).join(", ") || "none"}`,
    );
  }
  const ranks = new Set<number>();
  const inputWidths = new Map<number, number>();
  for (const [module, parts] of modules) {
    const { down, up } = parts;
    if (!down || !up) {
      throw new InvalidLoraFileError("not-a-lora", `module ${module} has a ${down ? "down" : "up"} factor but no ${down ? "up" : "down"} factor`);
    }
    for (const factor of [down, up]) {
      if (factor.shape.length !== 2 || !FLOAT_DTYPES.has(factor.dtype)) {
        throw new InvalidLoraFileError(
          "not-a-lora",
          `${factor.name} must be a 2-D float matrix, got shape ${JSON.stringify(factor.shape)} of ${factor.dtype}`,
        );
      }
    }
    const [rank, inFeatures] = down.shape as [number, number];
    if (rank === 0 || up.shape[1] !== rank) {
      throw new InvalidLoraFileError(
        "not-a-lora",
        `module ${module}: down ${JSON.stringify(down.shape)} and up ${JSON.stringify(up.shape)} do not share a non-zero rank`,
      );
    }
    ranks.add(rank);
    inputWidths.set(inFeatures, (inputWidths.get(inFeatures) ?? 0) + 1);
  }
  return {
    format: [...formatVotes].sort((a, b) => b[1] - a[1])[0]![0],
    family: detectFamily(inputWidths, [...modules.keys()]),
    modules: modules.size,
    ranks: [...ranks].sort((a, b) => a - b),
    unknownKeys,
    tensors: header.tensors.length,
    metadata: header.metadata,
  };
}

/** Most LoRA layers read the hidden state, so the commonest input width names the family; block indices must fit. */
function detectFamily(inputWidths: Map<number, number>, modules: string[]): string | null {
  const commonest = [...inputWidths].sort((a, b) => b[1] - a[1])[0]?.[0];
  const highestDouble = highestIndex(modules, /(?:^|[._])(?:double_blocks|(?<!single_)transformer_blocks)[._](\d+)/);
  const highestSingle = highestIndex(modules, /(?:single_blocks|single_transformer_blocks)[._](\d+)/);
  const family = FAMILIES.find((candidate) =>
    candidate.hidden === commonest && highestDouble < candidate.doubleBlocks && highestSingle < candidate.singleBlocks);
  return family?.name ?? null;
}

function highestIndex(modules: string[], pattern: RegExp): number {
  return Math.max(-1, ...modules.map((module) => Number(pattern.exec(module)?.[1] ?? -1)));
}
