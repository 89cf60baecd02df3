// The /preview gallery's script. It is served as a file, not inlined, so the page's
// Content-Security-Policy can allow only this server's own scripts and styles; handlers are
// attached here for the same reason (the policy refuses inline `on…` attributes).
function filterSeries(text) {
  const needle = text.toLowerCase();
  document.querySelectorAll('.series-group').forEach(function (group) {
    group.style.display = group.dataset.series.toLowerCase().includes(needle) ? '' : 'none';
  });
}
function setColumns(value) {
  document.documentElement.style.setProperty('--grid-columns', value);
  document.getElementById('gridValue').textContent = value;
  document.getElementById('gridColumns').value = value;
  try { localStorage.setItem('previewGridColumns', value); } catch (e) {}
}
function pollRun(card) {
  const bar = card.querySelector('.bar div');
  const meta = card.querySelector('.meta');
  fetch(card.dataset.url, { cache: 'no-store' }).then(function (response) {
    const type = response.headers.get('content-type') || '';
    if (type.indexOf('image/') === 0) { location.reload(); return null; }
    return response.json();
  }).then(function (body) {
    if (!body) { return; }
    const d = body.data || {};
    if (!d.series) { card.remove(); return; }
    const pct = Math.floor(d.percent || 0);
    bar.style.width = pct + '%';
    if (d.error) { card.classList.add('failed'); meta.textContent = d.error; return; }
    if (d.done) { location.reload(); return; }
    let text = d.currentPhase + ' · ' + pct + '%';
    if (d.queuePosition) { text = 'queued · #' + d.queuePosition; }
    else if (d.etaSeconds > 0) { text += ' · ~' + Math.ceil(d.etaSeconds) + 's left'; }
    meta.textContent = text;
    setTimeout(function () { pollRun(card); }, 1500);
  }).catch(function () { setTimeout(function () { pollRun(card); }, 3000); });
}
function retryRun(button) {
  const url = button.dataset.retry;
  button.disabled = true;
  fetch(url + '?remove', { cache: 'no-store' })
    .then(function () { return fetch(url + '?generate=1', { cache: 'no-store' }); })
    .then(function () { location.reload(); })
    .catch(function () { button.disabled = false; });
}
document.addEventListener('DOMContentLoaded', function () {
  document.getElementById('filter').addEventListener('input', function () { filterSeries(this.value); });
  document.getElementById('gridColumns').addEventListener('input', function () { setColumns(this.value); });
  document.querySelectorAll('button[data-retry]').forEach(function (button) {
    button.addEventListener('click', function () { retryRun(button); });
  });
  // Set from data attributes: the policy refuses inline style attributes, not the CSSOM.
  document.querySelectorAll('.bar div[data-percent]').forEach(function (bar) {
    bar.style.width = bar.dataset.percent + '%';
  });
  let saved = '4';
  try { saved = localStorage.getItem('previewGridColumns') || '4'; } catch (e) {}
  setColumns(saved);
  document.querySelectorAll('.run[data-url]').forEach(pollRun);
});
