// Builders of safetensors files for tests and the fake LoRA sites: well-formed ones from tensor descriptions, and raw ones whose header
// and data section the test controls byte for byte.
import { DTYPE_BYTES } from "../pool/safetensors.js";

export interface TensorSpec {
  name: string;
  dtype?: string;
  shape: number[];
}

/** A valid file: the tensors laid out in order, zero-filled, with optional string metadata. */
export function safetensorsFile(tensors: TensorSpec[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let offset = 0;
  for (const { name, dtype = "F16", shape } of tensors) {
    const bytes = shape.reduce((product, dimension) => product * dimension, DTYPE_BYTES[dtype] ?? 1);
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  return rawSafetensors(header, offset);
}

/** A file with exactly this header object (or header text) and a zero-filled data section of `dataBytes`. */
export function rawSafetensors(header: unknown, dataBytes: number): Buffer {
  const text = Buffer.from(typeof header === "string" ? header : JSON.stringify(header), "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([length, text, Buffer.alloc(dataBytes)]);
}

/** A diffusers-named LoRA of q/k/v in `doubleBlocks` double blocks of a model `hidden` wide (metadata makes it unique). */
export function diffusersLora(hidden: number, rank: number, doubleBlocks = 1, metadata?: Record<string, string>): Buffer {
  const tensors: TensorSpec[] = [];
  for (let block = 0; block < doubleBlocks; block++) {
    for (const projection of ["to_q", "to_k", "to_v"]) {
      const stem = `transformer.transformer_blocks.${block}.attn.${projection}`;
      tensors.push({ name: `${stem}.lora_A.weight`, shape: [rank, hidden] });
      tensors.push({ name: `${stem}.lora_B.weight`, shape: [hidden, rank] });
    }
  }
  return safetensorsFile(tensors, metadata);
}
