// `autolora pool inspect FILE [--json]`: validate a LoRA file's container and say what it is, or exit 2 with one
// line saying what is wrong.
import { inspectLora } from "../pool/inspect.js";
import { InvalidLoraFileError, readSafetensorsHeader } from "../pool/safetensors.js";
import { sha256File } from "../pool/store.js";
import type { CliIo } from "./main.js";

export async function inspectCommand(args: string[], io: CliIo): Promise<number> {
  const json = args.includes("--json");
  const files = args.filter((arg) => arg !== "--json");
  const unknownFlag = files.find((arg) => arg.startsWith("--"));
  if (files.length !== 1 || unknownFlag) {
    io.stderr(unknownFlag ? `autolora pool inspect: unknown option ${unknownFlag}` : "usage: autolora pool inspect FILE [--json]");
    return 2;
  }
  const file = files[0]!;
  try {
    const header = await readSafetensorsHeader(file);
    const lora = inspectLora(header);
    const report = {
      file,
      sha256: await sha256File(file),
      bytes: header.fileBytes,
      format: lora.format,
      family: lora.family,
      modules: lora.modules,
      ranks: lora.ranks,
      tensors: lora.tensors,
      unknown_keys: lora.unknownKeys,
    };
    if (json) {
      io.stdout(JSON.stringify(report));
    } else {
      io.stdout(`${file}: ${report.format} LoRA for ${report.family ?? "an unknown model family"}, ` +
        `${report.modules} modules, rank ${report.ranks.join("/")}, sha256 ${report.sha256}`);
      if (report.unknown_keys.length > 0) io.stdout(`  ignored keys: ${report.unknown_keys.join(", ")}`);
    }
    return 0;
  } catch (error) {
    if (error instanceof InvalidLoraFileError) {
      // A refusal that names the file itself (a FIFO, a directory) is not prefixed with it again.
      io.stderr(error.path === file ? error.message : `${file}: ${error.message}`);
      return 2;
    }
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "EISDIR" || code === "EACCES") {
      io.stderr(`${file}: ${code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : "permission denied"}`);
      return 2;
    }
    throw error;
  }
}
