// What a LoRA's text says, as one embedding beside its weight embedding: the hybrid score's text part.
//
// The text is what the source gave (a name it chose, trigger words, tags, preview prompts) and what the trainer left
// in the file (kohya's `ss_tag_frequency`: the caption tags of its training images, by count). Each piece is
// embedded on its own by the frozen text encoder (a caption is longer than the encoder reads well when joined to
// the rest) and the unit mean of the pieces is the LoRA's text embedding. A LoRA with no text has none: its score
// is its weights' alone, never pulled down by an empty or made-up description.

/** What the retriever and the text backfill need of a text encoder: unit embeddings of texts, in order. */
export interface TextEmbedder {
  embed(texts: string[]): Promise<ArrayLike<number>[]>;
}

export interface LoraText {
  /** A name the source chose (not the file's name, which is often a version string). */
  name?: string;
  trigger_words: string[];
  tags: string[];
  captions: string[];
}

// Enough of each kind to say what the LoRA does; a model page with 200 preview prompts says no more than 12 of them.
const MAX_CAPTIONS = 12;
const MAX_TRAINING_TAGS = 16;
const MAX_PIECE_CHARS = 400;

/** The pieces of text to embed for a LoRA, each once; empty when it came with none. */
export function loraTextPieces(text: LoraText, fileMetadata: Record<string, string> = {}): string[] {
  const joined = (values: string[]) => values.map((value) => value.trim()).filter(Boolean).join(", ");
  const pieces = [
    text.name?.trim() ?? "",
    joined(text.trigger_words),
    joined(text.tags),
    ...text.captions.slice(0, MAX_CAPTIONS).map((caption) => caption.trim()),
    joined(trainingTags(fileMetadata)),
  ];
  return [...new Set(pieces.filter(Boolean).map((piece) => piece.slice(0, MAX_PIECE_CHARS)))];
}

/** kohya's `ss_tag_frequency` ({dataset: {tag: count}}): the most frequent caption tags over all datasets. A
 *  malformed value is ignored (it is metadata, not the LoRA). */
export function trainingTags(fileMetadata: Record<string, string>): string[] {
  const raw = fileMetadata.ss_tag_frequency;
  if (!raw) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return [];
  }
  const counts = new Map<string, number>();
  for (const dataset of Object.values(isObject(parsed) ? parsed : {})) {
    for (const [tag, count] of Object.entries(isObject(dataset) ? dataset : {})) {
      const name = tag.trim();
      if (name && typeof count === "number" && Number.isFinite(count)) counts.set(name, (counts.get(name) ?? 0) + count);
    }
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, MAX_TRAINING_TAGS).map(([tag]) => tag);
}

/** The LoRA's text embedding: the unit mean of its pieces' embeddings; undefined without pieces. */
export async function embedLoraText(encoder: TextEmbedder, pieces: string[]): Promise<number[] | undefined> {
  return (await embedLoraTexts(encoder, [pieces]))[0];
}

/** embedLoraText for many LoRAs: their pieces go to the encoder in requests of at most 64 texts, so a prompt
 *  being embedded for a user meanwhile waits for one such request at most. */
export async function embedLoraTexts(encoder: TextEmbedder, piecesOf: string[][]): Promise<Array<number[] | undefined>> {
  const all = piecesOf.flat();
  const vectors: ArrayLike<number>[] = [];
  for (let start = 0; start < all.length; start += 64) vectors.push(...await encoder.embed(all.slice(start, start + 64)));
  let next = 0;
  return piecesOf.map((pieces) => {
    if (pieces.length === 0) return undefined;
    const own = vectors.slice(next, (next += pieces.length));
    const mean = new Array<number>(own[0]!.length).fill(0);
    for (const vector of own) for (let d = 0; d < mean.length; d++) mean[d] = mean[d]! + vector[d]!;
    const norm = Math.hypot(...mean);
    return norm > 1e-9 ? mean.map((value) => value / norm) : undefined;
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
