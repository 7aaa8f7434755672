// The test page of tests/it/browser.rs: what scitq's UI does on load, with our server behind it.
//
// Query: ?user=<name>&password=<password>&tasks=<id>,<id>,…[&ws_wait_ms=<ms>]
//
// 1. Opens the WebSocket /ws before logging in (no cookie yet: the server refuses the upgrade)
//    and reopens it 1 s after every close, as the UI does every 3 s.
// 2. POST /login (JSON), GET /fetchCookie → the session token.
// 3. Over gRPC-Web (the UI's transport, text format, `Authorization: Bearer <token>`): ListTasks,
//    ListWorkers, then StreamTaskLogsOutput of every task of the query at once, each to its end.
// 4. Waits (at most ws_wait_ms) for a `task/status` event on the reconnected socket.
//
// It asserts nothing: everything it saw goes to `window.__result` (JSON-friendly) for the test
// to judge, and `document.title` becomes `done` (or `error: …`). `window.__progress` tells the
// test when the socket is open after login and the streams are being read, so it can start
// writing log lines and finishing tasks.
import { GrpcWebFetchTransport } from "@protobuf-ts/grpcweb-transport";
import { TaskQueueClient } from "./gen/taskqueue.client";

/** Bounds: the page must stay small whatever the server sends. */
const MAX_LINES_PER_STREAM = 10_000;
const MAX_WS_MESSAGES = 1_000;
const MAX_WS_ATTEMPTS = 200;
const WS_RETRY_MS = 1_000;

interface WsAttempt {
  afterLogin: boolean;
  opened: boolean;
  error: boolean;
  closeCode: number | null;
}

interface WsMessage {
  type: unknown;
  action: unknown;
  id: unknown;
  payload: unknown;
}

interface StreamRecord {
  taskId: number;
  lines: string[];
  /** Messages whose task id or log type was not the one asked for. */
  foreign: number;
  headers: boolean;
  ended: boolean;
  status: string | null;
  error: string | null;
  ms: number;
}

const params = new URLSearchParams(location.search);
const username = params.get("user") ?? "";
const password = params.get("password") ?? "";
const taskIds = (params.get("tasks") ?? "")
  .split(",")
  .filter((s) => s !== "")
  .map(Number);
const wsWaitMs = Number(params.get("ws_wait_ms") ?? "20000");

const progress = {
  phase: "start",
  loggedIn: false,
  wsOpenAfterLogin: false,
  streamsWithHeaders: 0,
  streamsEnded: 0,
};
const ws = {
  url: (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/ws",
  attempts: [] as WsAttempt[],
  messages: [] as WsMessage[],
  pongs: 0,
  unparsed: 0,
};
const result: Record<string, unknown> = { ws, progress };
const w = window as unknown as Record<string, unknown>;
w.__progress = progress;

let finished = false;
let firstAttemptClosed: () => void = () => {};
const firstAttemptDone = new Promise<void>((resolve) => (firstAttemptClosed = resolve));

function show(text: string): void {
  const out = document.getElementById("out");
  if (out) out.textContent += text + "\n";
}

function connect(): void {
  if (finished || ws.attempts.length >= MAX_WS_ATTEMPTS) return;
  const attempt: WsAttempt = {
    afterLogin: progress.loggedIn,
    opened: false,
    error: false,
    closeCode: null,
  };
  ws.attempts.push(attempt);
  const socket = new WebSocket(ws.url);
  socket.onopen = () => {
    attempt.opened = true;
    if (attempt.afterLogin) progress.wsOpenAfterLogin = true;
    socket.send(JSON.stringify({ type: "ping" }));
    show("ws: open");
  };
  socket.onerror = () => {
    attempt.error = true;
  };
  socket.onmessage = (event) => {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(String(event.data));
    } catch {
      ws.unparsed++;
      return;
    }
    if (message.type === "pong") {
      ws.pongs++;
      return;
    }
    if (ws.messages.length < MAX_WS_MESSAGES) {
      ws.messages.push({
        type: message.type,
        action: message.action,
        id: message.id,
        payload: message.payload,
      });
    }
  };
  socket.onclose = (event) => {
    attempt.closeCode = event.code;
    if (attempt.afterLogin && attempt.opened) progress.wsOpenAfterLogin = false;
    if (ws.attempts.length === 1) firstAttemptClosed();
    if (!finished) setTimeout(connect, WS_RETRY_MS);
  };
}

function isStatusEvent(m: WsMessage): boolean {
  return (m.type === "task" && m.action === "status") || m.type === "task/status";
}

async function follow(client: TaskQueueClient, taskId: number): Promise<StreamRecord> {
  const record: StreamRecord = {
    taskId,
    lines: [],
    foreign: 0,
    headers: false,
    ended: false,
    status: null,
    error: null,
    ms: 0,
  };
  const started = performance.now();
  try {
    const call = client.streamTaskLogsOutput({ taskId });
    call.headers.then(
      () => {
        record.headers = true;
        progress.streamsWithHeaders++;
      },
      () => {},
    );
    for await (const message of call.responses) {
      if (message.taskId !== taskId || message.logType !== "stdout") record.foreign++;
      if (record.lines.length < MAX_LINES_PER_STREAM) record.lines.push(message.logText);
    }
    const status = await call.status;
    record.status = status.code;
    record.ended = true;
  } catch (e) {
    record.error = String(e);
  }
  record.ms = Math.round(performance.now() - started);
  progress.streamsEnded++;
  return record;
}

async function main(): Promise<void> {
  connect();
  // The first attempt carries no cookie: let it finish (it should be refused) before logging in.
  await Promise.race([firstAttemptDone, sleep(5_000)]);

  progress.phase = "login";
  const login = await fetch("/login", {
    method: "POST",
    credentials: "include",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  result.login = { status: login.status, body: (await login.text()).slice(0, 500) };
  if (!login.ok) throw new Error(`login answered ${login.status}`);
  progress.loggedIn = true;

  const cookie = await fetch("/fetchCookie", { credentials: "include" });
  const cookieBody = await cookie.text();
  result.fetchCookie = { status: cookie.status };
  if (!cookie.ok) throw new Error(`fetchCookie answered ${cookie.status}: ${cookieBody}`);
  const token = String(JSON.parse(cookieBody).token ?? "");
  result.tokenParts = token.split(".").length;
  // What the UI does to find who it is: the middle part through atob and JSON.parse.
  try {
    const claims = JSON.parse(atob(token.split(".")[1] ?? ""));
    result.claims = { username: claims.username, userId: claims.userId };
  } catch (e) {
    result.claims = { error: String(e) };
  }
  // The session cookie is HttpOnly: never visible to scripts.
  result.cookieVisible = document.cookie.includes("session_token");
  show("logged in");

  const transport = new GrpcWebFetchTransport({
    baseUrl: location.origin,
    format: "text",
    meta: { authorization: "Bearer " + token },
  });
  const client = new TaskQueueClient(transport);

  progress.phase = "lists";
  const tasks = await client.listTasks({});
  result.listTasks = tasks.response.tasks.map((t) => ({ taskId: t.taskId, status: t.status }));
  const workers = await client.listWorkers({});
  result.listWorkers = workers.response.workers.map((wk) => ({
    workerId: wk.workerId,
    name: wk.name,
  }));
  show(`lists: ${tasks.response.tasks.length} tasks, ${workers.response.workers.length} workers`);

  progress.phase = "streaming";
  result.streams = await Promise.all(taskIds.map((id) => follow(client, id)));
  show("streams ended");

  progress.phase = "waiting for task/status";
  const deadline = performance.now() + wsWaitMs;
  while (!ws.messages.some(isStatusEvent) && performance.now() < deadline) await sleep(100);
  result.statusEvents = ws.messages.filter(isStatusEvent).length;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function protocols(): { name: string; type: string; protocol: string }[] {
  return performance
    .getEntries()
    .filter((e) => e.entryType === "navigation" || e.entryType === "resource")
    .map((e) => ({
      name: e.name,
      type: e.entryType,
      protocol: (e as PerformanceResourceTiming).nextHopProtocol,
    }));
}

function distinct(entries: unknown): string {
  const seen = new Set((entries as { protocol: string }[]).map((e) => e.protocol));
  return [...seen].join(", ");
}

main().then(
  () => {
    finished = true;
    progress.phase = "done";
    result.protocols = protocols();
    w.__result = result;
    document.title = "done";
    show("done; protocols: " + distinct(result.protocols));
  },
  (e) => {
    finished = true;
    progress.phase = "error";
    result.error = String(e);
    result.protocols = protocols();
    w.__result = result;
    document.title = "error: " + String(e);
    show("error: " + String(e) + "; protocols: " + distinct(result.protocols));
  },
);
