import { IAnswer, ServerEvent } from '../src/protocol';
import {
  IAnswerState,
  chatSocketUrl,
  checksLine,
  codeKey,
  disconnected,
  fence,
  historyEntries,
  initialState,
  isActive,
  provenance,
  queueLine,
  reduce,
  renderAnswer,
  renderRequest
} from '../src/reducer';

const ANSWER: IAnswer = {
  cell: "df.groupby('city')['temp'].mean()",
  text: '',
  task: 'pandas',
  ok: true,
  summary: '✓ runs  ✓ columns · checked on a 2,000-row sample',
  checks: { runs: 'passed', columns: 'passed', 'one per group': 'warning' },
  warnings: ['the sample has 3 cities'],
  metadata: { model: 'qwen2.5-coder-0.5b-instruct', checks: { runs: 'passed' } },
  first_token_s: 0.8,
  total_s: 3.24
};

function run(events: ServerEvent[], id = 'a'): IAnswerState {
  return events.reduce(reduce, initialState(id));
}

describe('reduce', () => {
  it('goes queued -> started -> tokens -> done', () => {
    let s = initialState('a');
    expect(s.status).toBe('sending');
    s = reduce(s, { type: 'queued', id: 'a', position: 2 });
    expect([s.status, s.position]).toEqual(['queued', 2]);
    s = reduce(s, { type: 'queued', id: 'a', position: 1 });
    expect(s.position).toBe(1);
    s = reduce(s, { type: 'started', id: 'a' });
    expect([s.status, s.position]).toEqual(['running', null]);
    s = reduce(s, { type: 'token', id: 'a', text: 'df.group' });
    s = reduce(s, { type: 'token', id: 'a', text: "by('city')" });
    expect(s.text).toBe("df.groupby('city')");
    s = reduce(s, { type: 'done', id: 'a', answer: ANSWER });
    expect(s.status).toBe('done');
    expect(s.answer).toBe(ANSWER);
    expect(isActive(s)).toBe(false);
  });

  it('ignores events of another request', () => {
    const s = initialState('a');
    expect(reduce(s, { type: 'token', id: 'b', text: 'x' })).toBe(s);
    expect(reduce(s, { type: 'done', id: 'b', answer: ANSWER })).toBe(s);
  });

  it('ignores a token that crossed a stop on the wire, and a late done', () => {
    const stopped = run([
      { type: 'started', id: 'a' },
      { type: 'token', id: 'a', text: 'df' },
      { type: 'stopped', id: 'a' }
    ]);
    expect(stopped.status).toBe('stopped');
    expect(reduce(stopped, { type: 'token', id: 'a', text: '.head()' })).toBe(stopped);
    expect(reduce(stopped, { type: 'done', id: 'a', answer: ANSWER })).toBe(stopped);
    expect(renderAnswer(stopped)).toContain('Stopped');
    expect(renderAnswer(stopped)).toContain('df');
  });

  it('keeps the error message and shows it', () => {
    const s = run([
      { type: 'queued', id: 'a', position: 1 },
      { type: 'error', id: 'a', message: 'no kernel for this notebook: start it and ask again' }
    ]);
    expect(s.status).toBe('error');
    expect(s.error).toContain('no kernel');
    expect(renderAnswer(s)).toBe('**Error:** no kernel for this notebook: start it and ask again');
  });

  it('turns a lost connection into an error, but not after the answer', () => {
    const running = run([{ type: 'started', id: 'a' }]);
    expect(disconnected(running, 'socket closed').status).toBe('error');
    const done = run([{ type: 'done', id: 'a', answer: ANSWER }]);
    expect(disconnected(done, 'socket closed')).toBe(done);
  });
});

describe('renderAnswer', () => {
  it('shows the queue position', () => {
    expect(renderAnswer(run([{ type: 'queued', id: 'a', position: 3 }]))).toBe(
      '_Queued: position 3 (3 ahead)_'
    );
    expect(renderAnswer(run([{ type: 'queued', id: 'a', position: 0 }]))).toBe('_Queued: next_');
  });

  it('puts the summary above the code block, then checks and warnings', () => {
    const md = renderAnswer(run([{ type: 'done', id: 'a', answer: ANSWER }]));
    const summary = md.indexOf(ANSWER.summary);
    const code = md.indexOf("```python\ndf.groupby('city')['temp'].mean()\n```");
    expect(summary).toBeGreaterThan(-1);
    expect(code).toBeGreaterThan(summary);
    expect(md).toContain('3.2 s');
    expect(md).toContain('Checks: ✓ runs  ✓ columns  ! one per group');
    expect(md).toContain('> warning: the sample has 3 cities');
    expect(md).not.toContain('NOT passing');
  });

  it('says when the cell does not pass the checks', () => {
    const md = renderAnswer(run([{ type: 'done', id: 'a', answer: { ...ANSWER, ok: false } }]));
    expect(md).toContain('NOT passing the checks');
  });

  it('shows the text of an explanation, which has no cell', () => {
    const answer = { ...ANSWER, cell: '', task: 'explain', text: 'Line 1 groups by city.' };
    const md = renderAnswer(run([{ type: 'done', id: 'a', answer }]));
    expect(md).toContain('Line 1 groups by city.');
    expect(md).not.toContain('```python');
  });

  it('streams tokens in a fence they cannot close', () => {
    const s = run([
      { type: 'started', id: 'a' },
      { type: 'token', id: 'a', text: '```python\nx = 1\n```' }
    ]);
    const md = renderAnswer(s);
    expect(md).toContain('````\n```python\nx = 1\n```\n````');
  });
});

describe('helpers', () => {
  it('fence is longer than any backtick run inside', () => {
    expect(fence('a')).toBe('```\na\n```');
    expect(fence('````x````', 'py')).toBe('`````py\n````x````\n`````');
  });

  it('checksLine uses the magic marks', () => {
    expect(checksLine({ runs: 'passed', columns: 'failed', x: 'skipped', y: 'odd' })).toBe(
      '✓ runs  ✗ columns  - x  ? y'
    );
  });

  it('renderRequest shows the cell and error for fix', () => {
    const md = renderRequest('Fix the error this cell raised.', 'fix', {
      source: 'df["tmp"].mean()',
      cell_type: 'code',
      index: 2,
      error: "KeyError: 'tmp'"
    });
    expect(md).toContain('**Fix this error** (cell 3)');
    expect(md).toContain('```python\ndf["tmp"].mean()\n```');
    expect(md).toContain("KeyError: 'tmp'");
    expect(md).not.toContain('Fix the error this cell raised.');
    expect(renderRequest('plot temp', 'ask', null)).toBe('plot temp');
  });

  it('codeKey ignores surrounding whitespace and CRLF', () => {
    expect(codeKey('\nx = 1\r\ny = 2\n\n')).toBe('x = 1\ny = 2');
  });

  it('provenance is the metadata, unwrapped if sent as the magic payload', () => {
    expect(provenance(ANSWER)).toEqual(ANSWER.metadata);
    expect(provenance({ ...ANSWER, metadata: { qcoder: { model: 'm' } } })).toEqual({ model: 'm' });
  });

  it('chatSocketUrl adds the token as Jupyter does', () => {
    expect(chatSocketUrl('ws://h:8888/lab/', 'abc def')).toBe(
      'ws://h:8888/lab/qcoder/chat?token=abc%20def'
    );
    expect(chatSocketUrl('wss://h/base', '')).toBe('wss://h/base/qcoder/chat');
  });

  it('queueLine names the first queue position or the running request', () => {
    const queued = run([{ type: 'queued', id: 'a', position: 2 }]);
    const queued2 = run([{ type: 'queued', id: 'b', position: 3 }], 'b');
    const running = run([{ type: 'started', id: 'c' }], 'c');
    const done = run([{ type: 'done', id: 'd', answer: ANSWER }], 'd');
    expect(queueLine([done])).toBe('');
    expect(queueLine([queued2, queued])).toBe('Queued: position 2 (2 ahead)');
    expect(queueLine([running, queued])).toBe('Writing… (1 more queued)');
  });
});

describe('historyEntries', () => {
  it('reads exchanges (request + answer) and role messages, skipping junk', () => {
    const entries = historyEntries([
      { id: 'x', request: 'mean temp per city', action: 'ask', answer: ANSWER, time: 1700000000 },
      { id: 'y', request: 'plot it', error: 'the model is not installed' },
      { role: 'user', text: 'hello', time: 1700000001000 },
      { role: 'assistant', text: 'hi' },
      42,
      null,
      { id: 'z', request: 'stop me', status: 'stopped' }
    ]);
    expect(entries.map(e => [e.role, e.id])).toEqual([
      ['user', 'x-request'],
      ['assistant', 'x-answer'],
      ['user', 'y-request'],
      ['assistant', 'y-answer'],
      ['user', 'history-2-request'],
      ['assistant', 'history-3'],
      ['user', 'z-request'],
      ['assistant', 'z-answer']
    ]);
    expect(entries[0].body).toBe('mean temp per city');
    expect(entries[0].time).toBe(1700000000000);
    expect(entries[1].body).toContain(ANSWER.summary);
    expect(entries[1].answer?.cell).toBe(ANSWER.cell);
    expect(entries[3].body).toBe('**Error:** the model is not installed');
    expect(entries[4].time).toBe(1700000001000);
    expect(entries[7].body).toBe('_Stopped._');
  });

  it("reads the server's records: user and assistant messages with the same id", () => {
    const entries = historyEntries([
      {
        role: 'user',
        id: 'j1',
        text: '',
        action: 'fix',
        cell: { source: 'df.tmp', cell_type: 'code', index: 0, error: 'AttributeError: tmp' },
        time: '2026-12-06T07:00:00Z'
      },
      { role: 'assistant', id: 'j1', action: 'fix', model: 'm', time: '2026-12-06T07:00:05Z', answer: ANSWER },
      { role: 'user', id: 'j2', text: 'plot temp', action: 'ask', cell: null, time: '2026-12-06T07:01:00Z' },
      { role: 'assistant', id: 'j2', stopped: true, text: 'df.plot(' },
      { role: 'user', id: 'j3', text: 'plot rain', action: 'ask', cell: null },
      { role: 'assistant', id: 'j3', error: 'no kernel' }
    ]);
    expect(entries.map(e => e.id)).toEqual([
      'j1-request',
      'j1-answer',
      'j2-request',
      'j2-answer',
      'j3-request',
      'j3-answer'
    ]);
    expect(entries[0].body).toContain('**Fix this error** (cell 1)');
    expect(entries[0].body).toContain('AttributeError: tmp');
    expect(entries[0].time).toBe(Date.UTC(2026, 11, 6, 7, 0, 0));
    expect(entries[1].answer?.summary).toBe(ANSWER.summary);
    expect(entries[2].body).toBe('plot temp');
    expect(entries[3].body).toBe('_Stopped._\n\n```\ndf.plot(\n```');
    expect(entries[5].body).toBe('**Error:** no kernel');
  });

  it('reads separate request and answer items', () => {
    const entries = historyEntries([
      { id: 'r1', role: 'user', request: 'count rows', action: 'ask' },
      { id: 'r1', role: 'assistant', answer: { ...ANSWER, cell: 'len(df)' } }
    ]);
    expect(entries).toHaveLength(2);
    expect(entries[1].body).toContain('len(df)');
  });
});
