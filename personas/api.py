"""REST API of the personas app (filled in below)."""
from rest_framework.views import APIView
class SessionTokenView(APIView): pass
class StreamTokenView(APIView): pass
class PersonaListView(APIView): pass
class PersonaDetailView(APIView): pass
