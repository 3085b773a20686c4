// Carry an access token (?token=...) on to the page the user picks.
const token = new URLSearchParams(location.search).get("token");
if (token) {
  for (const link of document.querySelectorAll("a.choice")) link.search = `?token=${encodeURIComponent(token)}`;
}
